"""dsm5lab: reproducible DSM-5 criteria matching and evidence extraction on ReDSM5."""

__version__ = "0.1.0"
