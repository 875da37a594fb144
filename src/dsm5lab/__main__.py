from dsm5lab.cli import main

main()
