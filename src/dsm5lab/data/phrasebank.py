"""Sentence templates and slot vocabularies for the synthetic ReDSM5-format generator.

All text here was written for this project (first-person Reddit voice, no real people).
Template syntax: `[a|b|c]` picks one option inline, `{slot}` picks one entry of SLOTS[slot];
the first character of a rendered sentence is upper-cased.
"""

from __future__ import annotations

SLOTS: dict[str, tuple[str, ...]] = {
    "time": (
        "lately", "for months now", "for weeks now", "these past few weeks", "since the new year",
        "since last summer", "since the breakup", "since I moved out", "since winter started",
        "for most of this year", "ever since I lost my job", "since my exams started",
        "for a couple of months", "for what feels like forever", "since about March",
        "since the semester started", "these days", "for the past year", "since my birthday",
        "since I started this job",
    ),
    "freq": (
        "every day", "most days", "almost every day", "nearly all the time", "pretty much daily",
        "day after day", "every single morning", "most of the week", "constantly", "all the time",
        "every evening", "on most days",
    ),
    "intens": (
        "really", "so", "incredibly", "completely", "totally", "just", "honestly", "deeply",
        "painfully", "extremely", "seriously", "utterly",
    ),
    "sad_adj": (
        "empty", "hopeless", "numb", "down", "miserable", "low", "sad", "broken", "heavy", "flat",
        "gloomy", "defeated", "hollow", "blue", "awful", "crushed",
    ),
    "hobby": (
        "gaming", "drawing", "playing guitar", "reading", "going to the gym", "cooking", "hiking",
        "watching movies", "painting", "running", "baking", "writing", "skating", "photography",
        "playing piano", "gardening", "swimming", "knitting", "playing football", "listening to music",
        "climbing", "sewing", "fishing", "playing chess",
    ),
    "people": (
        "my friends", "my family", "my girlfriend", "my boyfriend", "my roommates", "my coworkers",
        "my sister", "my brother", "my partner", "my parents", "everyone around me", "my classmates",
    ),
    "relative": (
        "mom", "dad", "sister", "brother", "aunt", "grandma", "roommate", "cousin", "uncle",
        "best friend", "partner", "stepdad",
    ),
    "pounds": ("ten", "fifteen", "twenty", "eight", "twelve", "thirty", "twenty-five", "eighteen"),
    "hour": ("2am", "3am", "4am", "5am", "3 in the morning", "4 in the morning", "sunrise", "dawn"),
    "place": ("work", "school", "the store", "dinner", "the gym", "class", "church", "the bus stop"),
    "chore": (
        "showering", "doing laundry", "making breakfast", "brushing my teeth", "washing the dishes",
        "getting dressed", "taking out the trash", "making my bed", "walking to the mailbox",
    ),
    "failure": (
        "failure", "disappointment", "waste of space", "screw-up", "fraud", "loser", "burden",
        "joke", "mess",
    ),
    "task": (
        "lectures", "my homework", "my job", "a conversation", "emails", "a TV show", "my reading",
        "spreadsheets", "a simple recipe", "my lab reports",
    ),
    "lifeline": ("mom", "dog", "little brother", "cat", "little sister", "grandma", "best friend", "dad"),
    "age": ("17", "19", "20", "22", "24", "26", "27", "29", "31", "34", "38", "42"),
    "job": (
        "a barista", "a nurse", "a software tester", "a cashier", "a warehouse worker",
        "a teacher", "an electrician", "a line cook", "a receptionist", "a delivery driver",
        "a bank teller", "a lab tech", "a mechanic", "a preschool aide",
    ),
    "subject": (
        "nursing", "engineering", "psychology", "computer science", "law", "history", "biology",
        "accounting", "graphic design", "chemistry", "marketing", "economics",
    ),
    "errand": (
        "went grocery shopping", "did my taxes", "fixed my bike", "cleaned out the garage",
        "took my car to the mechanic", "walked the dog", "picked up a package", "returned some shoes",
        "went to the post office", "repotted my plants", "renewed my license",
    ),
    "pet": ("dog", "cat", "rabbit", "hamster", "parrot", "gecko"),
    "pet_name": ("Biscuit", "Milo", "Luna", "Pepper", "Ziggy", "Mochi", "Olive", "Rocket"),
    "weekday": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "med": ("sertraline", "fluoxetine", "an SSRI", "escitalopram", "bupropion", "venlafaxine", "citalopram"),
    "loss": ("dad", "mom", "grandma", "grandpa", "best friend", "older brother", "uncle", "aunt"),
    "when": (
        "last month", "in March", "a few months ago", "last spring", "right before Christmas",
        "two years ago", "in the summer", "last week", "over the winter", "a year ago",
    ),
}

# Evidence sentences (status 1), per criterion; each expresses its criterion and no other.
POSITIVE: dict[str, tuple[str, ...]] = {
    "DEPRESSED_MOOD": (
        "I feel {intens} {sad_adj} {freq}.",
        "I've been {sad_adj} {time} and nothing lifts it.",
        "[Most mornings|Every morning|Most days|Every day] I wake up already feeling [so|really|totally] {sad_adj}.",
        "There's this [heavy|dark|gray|thick] cloud over me {freq} and I can't shake it.",
        "I cry [for no reason|over nothing|in the shower|in my car|on the bus] {freq}.",
        "Everything feels [bleak|gray|colorless|dark] {time}.",
        "I'm {intens} sad [all the time|every day|most of the day] and I don't even know why.",
        "The [sadness|heaviness|despair|misery] just sits on my [chest|shoulders] {freq}.",
        "I can't remember the last time I felt [happy|okay|normal|good|like myself], it's been {sad_adj} {time}.",
        "Honestly I've felt {sad_adj} {time}, like a weight I carry around.",
        "Some evenings I sit in my [room|car|kitchen|closet] feeling {intens} {sad_adj}.",
        "My mood has been [at rock bottom|in the gutter|so low|terrible] {time}.",
        "I feel like I'm drowning in sadness {freq}.",
        "Nothing feels okay anymore, I'm just {sad_adj} {freq}.",
        "I've been in a [really dark|deep|bad|horrible] place {time}.",
        "It's like the color drained out of everything {time}.",
        "I keep tearing up at {place} because I feel so {sad_adj}.",
        "This [emptiness|sadness|low feeling|gloom] follows me around {freq}.",
    ),
    "ANHEDONIA": (
        "I used to love {hobby} but now I can't be bothered.",
        "Even {hobby} doesn't do anything for me anymore.",
        "Nothing is fun {time}, not even {hobby}.",
        "I stopped {hobby} [months ago|a while back|last year|in the fall] because it feels like a chore.",
        "I don't enjoy anything anymore, it all feels [flat|boring|like going through the motions|meaningless] {time}.",
        "[My friends|My roommates|My coworkers|People from work|My cousins] [invite|ask] me out and I {intens} don't care to go.",
        "I've lost interest in [pretty much everything|stuff I used to care about|all my hobbies|things I loved] {time}.",
        "{hobby} was my whole thing and now I feel nothing when I do it.",
        "I bought a new [game|book|album|set of paints|board game] and never even opened it, I just don't care about {hobby} anymore.",
        "Things that used to make me happy, like {hobby}, just feel [boring|flat|pointless] now.",
        "I can't get excited about anything, not even [my birthday|the holidays|my vacation|concerts|{hobby}].",
        "Music, movies, going out, none of it feels good {time}.",
        "I sit in front of my [console|guitar|sketchbook|books|easel] and feel zero desire to start.",
        "I just go through the motions {freq} without enjoying any of it.",
        "Hanging out with {people} feels like a chore {time}.",
        "I quit [my band|the climbing club|my soccer team|my book club|the choir] [last month|recently|in the spring|this year] because I stopped caring about it.",
        "I have no interest in {hobby} or anything else {time}.",
    ),
    "APPETITE_CHANGE": (
        "I've [barely been eating|been skipping meals|had no appetite] {time}.",
        "I lost about {pounds} pounds without trying {time}.",
        "I gained about {pounds} pounds {time} from eating my feelings.",
        "Food tastes like [cardboard|nothing|sand] to me {time}.",
        "Some days I only eat [a granola bar|a slice of toast|some crackers|one meal|a banana] because I'm just not hungry.",
        "I binge on [junk food|chips|ice cream|fast food|candy] {freq} even when I'm not hungry.",
        "My appetite is [completely gone|all over the place|nonexistent|way up] {time}.",
        "I forget to eat until [the evening|late at night|I feel dizzy|my stomach hurts] because I'm never hungry {time}.",
        "I've been stress eating {freq} and my clothes don't fit anymore.",
        "Just the thought of food makes me feel sick {time}.",
        "My {relative} noticed I've gotten really thin {time}.",
        "I eat way more than usual {time}, like I can't stop.",
        "I have to force myself to eat {freq}.",
        "I've put on [a ton of|so much|noticeable] weight {time} and I don't even enjoy the food.",
        "Meals feel like a chore {time}, I just push the food around my plate.",
        "I keep raiding the fridge {freq} even though I'm not hungry.",
    ),
    "SLEEP_ISSUES": (
        "I can't fall asleep until {hour} {freq}.",
        "I wake up at {hour} {freq} and can't get back to sleep.",
        "I've been sleeping [12|13|14|fifteen] hours a day {time} and it's still not enough.",
        "My sleep is {intens} messed up {time}.",
        "I lie awake for hours {freq} with my mind racing.",
        "I get maybe [three|four|two] hours of sleep a night {time}.",
        "Insomnia has been [killing me|brutal|relentless|a nightmare] {time}.",
        "I sleep through my alarms and stay in bed asleep until [noon|the afternoon|2pm|3pm] {freq}.",
        "I've had [insomnia|trouble sleeping|awful sleep] {time}, even melatonin doesn't help.",
        "I keep waking up [every hour|several times a night|in a sweat|at random times] {time}.",
        "My sleep schedule is completely wrecked, I'm up all night {freq}.",
        "I can't sleep more than a few hours at a time {time}.",
        "I sleep [most of the weekend|through whole afternoons|ten hours and nap on top of that] {time}.",
        "[Nights are the worst|Bedtime is the worst|Every night is the same], I just stare at the [ceiling|wall|dark] until {hour}.",
        "I've been oversleeping {freq} and it's wrecking my [classes|job|routine|mornings].",
        "I toss and turn {freq} and barely sleep[ more than a few hours| at all|].",
    ),
    "PSYCHOMOTOR": (
        "I can't sit still {freq}, I keep pacing around my [room|apartment|kitchen|hallway].",
        "I move and talk so slowly {time} that people [ask if I'm okay|have noticed|comment on it].",
        "My {relative} says I've been moving like I'm in slow motion {time}.",
        "I'm {intens} restless, I keep fidgeting and tapping my [leg|fingers|foot|pen] {freq}.",
        "Getting up from the couch takes forever {time}, my body moves like it's going through [mud|concrete|wet sand].",
        "I talk so slowly {time} that people finish my sentences.",
        "I feel physically agitated {freq}, like I need to keep moving.",
        "I can't stay in one place {time}, I keep getting up and sitting back down.",
        "[Coworkers|My classmates|My roommates] noticed I've been pacing around {freq}.",
        "My movements are so sluggish {time} that I keep fumbling simple things.",
        "I keep wringing my hands and shifting in my seat {freq}.",
        "Everything about me is slowed down {time}, my speech, my walking, even my typing.",
        "I've been so keyed up {time} that I can't stop moving around.",
        "People tell me I seem [slowed down|sluggish|like a zombie] when I talk {time}.",
        "I pace back and forth for hours {freq} because I physically can't sit down.",
        "My {relative} pointed out that I take forever to answer and move really slowly {time}.",
    ),
    "FATIGUE": (
        "I'm {intens} exhausted {freq} even after a full night's sleep.",
        "I have zero energy {time}.",
        "Simple things like {chore} wear me out completely.",
        "I feel drained {freq} no matter how much I rest.",
        "My body feels so heavy {time}, like I'm running on empty.",
        "By noon I'm already [wiped out|completely spent|out of energy|worn out] {freq}.",
        "I'm tired all the time {time} and coffee doesn't even help.",
        "Getting through a [work day|school day|shift|lecture] leaves me completely drained {time}.",
        "I have to lie down after {chore} because I'm so worn out.",
        "I feel {intens} fatigued {freq}, like my batteries are dead.",
        "I don't have the energy to [cook|clean my room|answer texts|go outside|do laundry] {time}.",
        "My whole body aches with tiredness {freq}.",
        "Everything takes so much energy {time} that I just collapse on the couch.",
        "I'm running on fumes {freq}.",
        "Even {chore} feels like running a marathon {time}.",
        "I'm {intens} worn out {time} and I haven't even done anything.",
    ),
    "WORTHLESSNESS": (
        "I feel {intens} worthless {freq}.",
        "I'm just a {failure} to {people}.",
        "Everything that goes wrong [at home|at work|with my friends|in my family|] {time} feels like my fault.",
        "I hate myself {time}, I'm such a {failure}.",
        "I keep replaying every mistake I've ever made and feeling [guilty|ashamed|disgusting] {freq}.",
        "I'm useless at [everything|my job|school|being a friend|being a partner][, everyone can see it|, always have been| and I know it|].",
        "I feel so guilty {freq} for [letting my parents down|being a bad friend|wasting everyone's time|not trying harder].",
        "Compared to [everyone else|my friends|my siblings|people my age|my classmates] I'm [nothing|a joke|a failure|a nobody|so far behind] {time}.",
        "I don't deserve [anyone's help|my friends|my partner|to be happy|the people in my life][, not after everything I've done| at all|, honestly|].",
        "I'm {intens} ashamed of who I am[ and what I've become| and I can't fix it|, always have been|].",
        "I feel like a complete {failure} {time}.",
        "I'm convinced [my friends|people at work|my classmates|my coworkers|my parents] secretly think I'm [pathetic|a joke|useless|annoying] {time}.",
        "My {relative} [works so hard for me|does so much for me|believes in me] and I just keep [disappointing them|letting them down|failing them].",
        "I can't stop blaming myself for [the breakup|losing my job|failing my exams|the fight with my sister] {time}.",
        "I feel worthless {freq}, like I have nothing to offer [anyone|the world|my friends|anybody].",
        "[I've realized|It's obvious|I'm sure|I know deep down] that I'm the [problem|common factor|reason things fail] in every [relationship|friendship|job|team] I've ever had.",
        "I feel like such a {failure} that I can't look {people} in the eye.",
    ),
    "COGNITIVE_ISSUES": (
        "I can't concentrate on anything {time}.",
        "I read the same page [five|ten|three|six] times and still don't take anything in.",
        "My brain feels foggy {freq} and I keep forgetting things.",
        "I can't make even simple decisions like [what to eat|what to wear|which email to answer first|what to buy] {time}.",
        "At {place} I zone out {freq} and miss half of what people say.",
        "I forgot [my mom's birthday|an important meeting|my own appointment|to pick up my sister] because my head is such a mess {time}.",
        "Focusing on {task} is impossible {time}.",
        "My thoughts feel {intens} slow and scattered {time}.",
        "I start tasks and lose track halfway through {freq}.",
        "I stare at my screen for hours {freq} and can't get a single thing done because I can't focus.",
        "My memory has gotten so bad {time} that I have to write everything down.",
        "I keep losing my train of thought mid-sentence {freq}.",
        "Deciding anything, even [what to text back|which shirt to buy|what to cook], takes me forever {time}.",
        "It's like my brain is full of static {freq}.",
        "My grades dropped because I just can't concentrate on {task} {time}.",
        "I can't follow {task} anymore, my mind keeps drifting {freq}.",
    ),
    "SUICIDAL_THOUGHTS": (
        "I've been thinking about [ending it|killing myself|not waking up] {freq}.",
        "Sometimes I wish I could just [disappear|stop existing|fall asleep and not wake up] {time}.",
        "I've looked up ways to [end my life|kill myself] {time}.",
        "I think {people} would be better off if I was gone.",
        "[I just don't|Honestly I don't|I really don't] want to be alive anymore, not [today|tomorrow|ever|like this].",
        "[Death|Dying|Ending it] feels like the only way out {time}.",
        "I have a plan and I've been [thinking about|going over|rehearsing] it {freq}.",
        "I sat on the [bridge|roof|edge of the tub|train platform] [last week|on Sunday|a few nights ago] thinking about ending it.",
        "The only thing stopping me from killing myself is my {lifeline}.",
        "I keep thinking about how easy it would be to just end it {time}.",
        "I've started writing goodbye [letters|notes] to {people}.",
        "Thoughts of suicide pop into my head {freq}.",
        "I honestly don't see a reason to keep living {time}.",
        "I wrote a [note|goodbye letter] [last night|a few days ago|this weekend|on {weekday}] and [I don't know if I'll use it|hid it in my drawer|it's still in my desk].",
        "I think about dying {freq} and it scares me how calm I feel about it.",
        "If I got hit by a car [tomorrow|today|on the way to {place}] [I think|honestly|part of me thinks] I'd feel [relieved|grateful|at peace].",
    ),
}

# Hard negatives (status 0): the theme is mentioned but explicitly not present, by kind.
NEGATIVE: dict[str, dict[str, tuple[str, ...]]] = {
    "DEPRESSED_MOOD": {
        "negation": (
            "I'm not sad, just bored [out of my mind|this weekend|with my routine].",
            "I wouldn't say I'm depressed, I'm [mostly|just] annoyed at my [landlord|boss|roommate].",
            "Don't get me wrong, I'm not down or anything, just [busy|stressed about money|swamped at work].",
        ),
        "recovery": (
            "My mood has been [way better|pretty good|stable] since I [changed jobs|moved out|started running].",
            "I was really down [last year|in high school|after the breakup] but that passed a while ago.",
            "The sadness I had [over the winter|after my move|in college] is gone now.",
        ),
        "opposite": (
            "I've actually been in a [great|really good|cheerful] mood [lately|this week|all month].",
            "Honestly I feel happier than I have in [years|a long time|ages].",
            "I've been laughing a lot and feeling [upbeat|optimistic|light] [lately|these days].",
        ),
    },
    "ANHEDONIA": {
        "negation": (
            "It's not that I've lost interest in {hobby}, I just don't have time.",
            "I still love {hobby}, that hasn't changed.",
            "I haven't stopped enjoying things, I'm just [stressed|busy|broke] right now.",
        ),
        "recovery": (
            "I got back into {hobby} [last month|recently|a few weeks ago] and it's been fun again.",
            "For a while nothing was fun, but I'm enjoying {hobby} again now.",
            "My interest in {hobby} came back once [summer started|I changed jobs|I moved]." ,
        ),
        "opposite": (
            "I've been super into {hobby} lately, I do it every day.",
            "I'm really looking forward to [the concert|my trip|the weekend|my cousin's wedding].",
            "I picked up {hobby} recently and I'm loving it.",
        ),
    },
    "APPETITE_CHANGE": {
        "negation": (
            "My appetite is fine, I eat [three meals a day|normally|like I always have].",
            "I'm not skipping meals or anything, I eat [normally|regularly|plenty].",
            "Weight hasn't been an issue for me, it's stayed the same for [years|ages|a long time].",
        ),
        "recovery": (
            "I was barely eating [last spring|in college|a while ago] but my appetite is back to normal now.",
            "I used to binge a lot but I've been eating normally for [months|a year|a while].",
            "My weight went back to normal after [a few months|last year|the summer].",
        ),
        "opposite": (
            "I've been cooking [healthy meals|big breakfasts|real dinners] and actually enjoying them.",
            "I have a really good appetite, I love my food.",
            "I'm eating well and I've kept a steady weight [lately|this year|for a while].",
        ),
    },
    "SLEEP_ISSUES": {
        "negation": (
            "I sleep fine, that's never been the problem.",
            "I'm not having any trouble sleeping, I'm out by [ten|eleven|midnight] every night.",
            "Sleep isn't an issue for me, I get a solid [seven|eight] hours.",
        ),
        "recovery": (
            "My sleep has been fine since I [changed jobs|stopped drinking coffee late|got blackout curtains].",
            "I had insomnia [a couple of years ago|in high school|during exams] but it went away.",
            "I'm sleeping much better now than [last year|I was in the spring|before the move].",
        ),
        "opposite": (
            "I've been sleeping like a baby [lately|this month|since summer].",
            "I wake up rested [most mornings|every day|these days].",
            "I go to bed at a normal time and sleep straight through [most nights|every night].",
        ),
    },
    "PSYCHOMOTOR": {
        "negation": (
            "I'm not restless or anything, just a bit bored.",
            "Nobody has noticed me moving or talking any differently.",
            "I don't feel slowed down physically at all.",
        ),
        "recovery": (
            "The fidgeting I had [last year|a while ago|in college] has mostly stopped.",
            "I used to pace around a lot when I was stressed, but not anymore.",
            "My {relative} said I was moving slowly [a while back|last winter] but that's passed.",
        ),
        "opposite": (
            "I've been calm and steady [lately|this month|these days], no pacing around at all.",
            "I feel physically relaxed [lately|these days|this month].",
            "I move at my normal pace and I feel pretty coordinated.",
        ),
    },
    "FATIGUE": {
        "negation": (
            "I'm not tired, I just have [a lot on my plate|a busy week|too many deadlines].",
            "My energy is fine, I'm not exhausted or anything.",
            "It's not fatigue, I just have a [busy|packed|hectic] schedule.",
        ),
        "recovery": (
            "I was exhausted all the time [last year|at my old job|after surgery] but my energy is back now.",
            "Since I started [running|eating better|walking every morning] I haven't felt drained.",
            "The tiredness wore off [a few weeks ago|after the exams|once I changed jobs].",
        ),
        "opposite": (
            "I have tons of energy [lately|these days|this month].",
            "I've been waking up full of energy and getting a lot done.",
            "Honestly I've had more energy than usual [this month|lately|these days].",
        ),
    },
    "WORTHLESSNESS": {
        "negation": (
            "I don't think I'm a bad person, I just made a mistake.",
            "I'm not blaming myself for [the breakup|what happened|losing the job], it was nobody's fault.",
            "I know I'm a decent [friend|worker|student|person], that's not the issue.",
        ),
        "recovery": (
            "I used to hate myself [in high school|as a teenager|a few years ago], but I've made peace with who I am.",
            "The guilt I felt [about the breakup|after the accident|about my old job] has faded.",
            "I've learned to stop beating myself up since [my new job|I moved|college ended].",
        ),
        "opposite": (
            "I'm actually proud of myself for [finishing my degree|getting the promotion|running a half marathon].",
            "I feel pretty good about who I am [these days|lately|this year].",
            "I know I bring a lot to my [team|friendships|family].",
        ),
    },
    "COGNITIVE_ISSUES": {
        "negation": (
            "My focus is fine, I can concentrate at [work|school|my desk] no problem.",
            "I don't have trouble making decisions, I just don't like my options.",
            "My memory is fine, I just forgot my [keys|umbrella|charger] once.",
        ),
        "recovery": (
            "I had trouble concentrating [during exams|last semester|after the move] but it cleared up.",
            "The brain fog I had [last year|a while back|in the winter] is gone now.",
            "I can focus again since I [changed classes|got a new desk|started using a planner].",
        ),
        "opposite": (
            "I've been really focused and productive [lately|this week|these days].",
            "My mind feels sharp and clear [these days|this month|lately].",
            "I finished [three books|my whole project|a big report] this week without losing focus.",
        ),
    },
    "SUICIDAL_THOUGHTS": {
        "negation": (
            "I'm not suicidal, I just need to vent.",
            "I would never hurt myself, I want to make that clear.",
            "I don't want to die, I just want things to [change|get easier|slow down].",
        ),
        "recovery": (
            "I had suicidal thoughts [years ago|in high school|a while back] but I haven't had them in a long time.",
            "It's been [two years|over a year|a long time] since I thought about ending my life.",
            "Those dark thoughts about dying went away after [I got help|I moved|high school].",
        ),
        "opposite": (
            "I really want to live and see how things turn out.",
            "I'm excited about the future and I want to be around for it.",
            "I have a lot to live for, like my [kids|dog|friends|sister].",
        ),
    },
}

# Sentences that express two criteria at once; keys follow the SYMPTOMS order.
PAIRS: dict[tuple[str, str], tuple[str, ...]] = {
    ("SLEEP_ISSUES", "FATIGUE"): (
        "I'm exhausted all day {time} but still can't sleep at night.",
        "I'm [wiped out|drained|worn out] {freq} and then lie awake until {hour}.",
    ),
    ("DEPRESSED_MOOD", "WORTHLESSNESS"): (
        "I feel so {sad_adj} {freq} and I hate myself for it.",
        "I'm sad [all the time|{freq}|{time}] and I feel like a {failure} to {people}.",
    ),
    ("DEPRESSED_MOOD", "ANHEDONIA"): (
        "I feel so {sad_adj} that even {hobby} doesn't make me happy anymore.",
        "I'm [miserable|down|empty] {freq} and nothing I used to love interests me.",
    ),
    ("DEPRESSED_MOOD", "SUICIDAL_THOUGHTS"): (
        "I feel so hopeless {time} that I keep thinking about ending it.",
        "I'm so {sad_adj} that I wish I could just stop existing.",
    ),
    ("WORTHLESSNESS", "SUICIDAL_THOUGHTS"): (
        "I'm such a {failure} that I think {people} would be better off if I was dead.",
        "I hate myself so much {time} that I keep thinking about [killing myself|ending it|not being alive].",
    ),
    ("DEPRESSED_MOOD", "SLEEP_ISSUES"): (
        "I cry myself to sleep and still wake up at {hour} feeling {sad_adj}.",
    ),
    ("DEPRESSED_MOOD", "FATIGUE"): (
        "I feel [empty|down|miserable|hopeless] and drained {freq}.",
    ),
    ("DEPRESSED_MOOD", "APPETITE_CHANGE"): (
        "I'm so [sad|down|miserable] that I've barely eaten {time}.",
    ),
    ("DEPRESSED_MOOD", "COGNITIVE_ISSUES"): (
        "I feel so {sad_adj} that I can't focus on anything {time}.",
    ),
    ("ANHEDONIA", "FATIGUE"): (
        "I don't have the energy or the interest to do {hobby} anymore.",
    ),
    ("SLEEP_ISSUES", "COGNITIVE_ISSUES"): (
        "I barely sleep {time} and my brain is so foggy I can't concentrate on {task}.",
    ),
    ("FATIGUE", "COGNITIVE_ISSUES"): (
        "I'm so exhausted {time} that I can't focus on anything at [work|school|home].",
    ),
    ("PSYCHOMOTOR", "FATIGUE"): (
        "I'm so [drained|exhausted|worn out|wiped] {time} that I [move|walk|get around] like I'm in slow motion.",
    ),
    ("WORTHLESSNESS", "COGNITIVE_ISSUES"): (
        "I can't concentrate at [work|school] and I feel like a useless {failure} because of it.",
    ),
    ("ANHEDONIA", "WORTHLESSNESS"): (
        "I don't enjoy {hobby} or anything else anymore and I feel like a {failure}.",
    ),
    ("APPETITE_CHANGE", "SLEEP_ISSUES"): (
        "I barely eat and I barely sleep {time}.",
    ),
    ("SLEEP_ISSUES", "SUICIDAL_THOUGHTS"): (
        "I lie awake [until {hour}|{freq}|most nights] [thinking about|imagining] [killing myself|ending it|not being here anymore].",
    ),
    ("ANHEDONIA", "SUICIDAL_THOUGHTS"): (
        "Nothing brings me joy {time}, not even {hobby}, and I've started thinking about ending it.",
    ),
    ("APPETITE_CHANGE", "FATIGUE"): (
        "I've stopped eating properly and I have no energy at all {time}.",
    ),
    ("SLEEP_ISSUES", "WORTHLESSNESS"): (
        "I lie awake [until {hour}|every night|most nights] replaying every mistake and hating myself.",
    ),
    ("FATIGUE", "SUICIDAL_THOUGHTS"): (
        "I have no energy left {time} and I keep thinking about [ending it|killing myself|not being here].",
    ),
    ("SLEEP_ISSUES", "PSYCHOMOTOR"): (
        "I pace around my [room|apartment|kitchen] [all night|until {hour}] because I can't sleep.",
    ),
    ("APPETITE_CHANGE", "WORTHLESSNESS"): (
        "I've gained so much weight {time} and I hate myself for it.",
    ),
    ("COGNITIVE_ISSUES", "SUICIDAL_THOUGHTS"): (
        "I can't think straight {time} and the thoughts about ending it won't stop.",
    ),
    ("ANHEDONIA", "SLEEP_ISSUES"): (
        "I sleep [all day|most of the day|until 3pm] {time} because there's nothing I enjoy doing anymore, not even {hobby}.",
    ),
}

# SPECIAL_CASE evidence: clinically relevant but outside A.1-A.9, by category.
SPECIAL: dict[str, tuple[str, ...]] = {
    "treatment": (
        "I was diagnosed with [major depression|depression|MDD|dysthymia] {when}.",
        "My doctor put me on {med} {when}.",
        "I've been on antidepressants for [a year|six months|years|a few weeks] now.",
        "My psychiatrist just raised my dose of {med}.",
        "I was diagnosed with [ADHD|generalized anxiety|PTSD|OCD|panic disorder] {when}.",
        "I stopped taking {med} {when} without telling my doctor.",
    ),
    "bipolar": (
        "I was diagnosed with bipolar [disorder|II|I] {when}.",
        "{when} I had a manic episode and spent [all my savings|my rent money|thousands] in a week.",
        "My moods swing from really high to really low [every few weeks|for no reason|every couple of months].",
        "During my last [manic|hypomanic] episode I felt invincible and started [three businesses|a dozen projects|fights with everyone].",
    ),
    "grief": (
        "My {loss} passed away {when} and I'm still grieving.",
        "It's been [a year|six months|a few weeks|two months] since I lost my {loss}.",
        "I keep thinking about the funeral {when}, I still can't believe my {loss} is gone.",
        "Since my {loss} died {when} I've been trying to hold the family together.",
    ),
    "substance": (
        "I've been drinking [most nights|every night|way too much] to cope.",
        "I started [smoking weed|drinking|vaping] [every day|a lot|heavily] {when}.",
        "I relapsed [last week|on {weekday}|again|yesterday] after [eight months|a year|six weeks|ninety days] sober.",
        "I've been taking [my roommate's pills|whatever I can find|more than I should] just to get through the [day|week|shift] {time}.",
    ),
}

# Neutral context: never annotated.
FILLER: tuple[str, ...] = (
    "I'm {age} and [work as {job}|I'm in college|live with my parents|just started a new job].",
    "Throwaway account because my [friends|family|coworkers] know my main.",
    "Sorry for the long post.",
    "Sorry for formatting, I'm on mobile.",
    "Thanks for reading if you made it this far.",
    "Any advice would be appreciated.",
    "Has anyone else been through something like this?",
    "I don't really know why I'm posting this here.",
    "I live with [my roommate|two friends|my partner|my cousin] in a [small apartment|shared house|studio|townhouse] [downtown|near campus|in the suburbs|outside the city].",
    "My {relative} [called me yesterday|came over for dinner|is visiting next week|sent me a package].",
    "Work has been [busy|hectic|the same as always|slow] [this week|this month|since the holidays].",
    "Yesterday I {errand}.",
    "On {weekday} I {errand}.",
    "I'm in my [first|second|third|final] year of {subject}.",
    "We had a team meeting [today|this morning|on {weekday}] about the new [schedule|project|software|office layout].",
    "My [roommate|sister|neighbor|cousin] got a new [puppy|cat|car|job] last week.",
    "I have an exam on {weekday} in {subject}.",
    "Some background: I [grew up in a small town|moved here for work|have two younger siblings|started college last fall].",
    "For context, I've been with my [girlfriend|boyfriend|partner|wife|husband] for [two|three|five|seven] years.",
    "It rained all [day|week|weekend] here.",
    "My [car|laptop|phone|washing machine] broke down [again|last week|on {weekday}].",
    "I'm not sure if this is the right subreddit for this.",
    "Mods, feel free to remove this if it breaks the rules.",
    "Edit: [fixed some typos|thanks for the replies|formatting].",
    "I work [nights|weekends|part time|full time] at [a grocery store|a hospital|a call center|an office|a restaurant].",
    "My {relative} and I [went to the beach|watched a movie|had lunch|went for a drive] on {weekday}.",
    "The commute to [work|campus] takes about [twenty minutes|an hour|forty minutes].",
    "I've lived in this [city|town|apartment] for [three|six|ten|two] years.",
    "My {relative} keeps asking when I'm going to [visit|call|get a real job|finish my degree].",
    "We're supposed to [move|go on a trip|have a family dinner] next [month|week|weekend].",
    "I just [finished|started|dropped] a [class|course|certificate] in [accounting|photography|coding|Spanish].",
    "Does anyone have tips on how to talk to [my parents|my partner|my boss|a doctor] about this?",
    "Not sure how to explain it but I'll try.",
    "Okay so here's the thing.",
    "Long time lurker, first time posting.",
    "English isn't my first language, sorry for any mistakes.",
    "My {relative} said something like \"[you'll figure it out|just relax|it's just a phase|everyone goes through this]\" when I brought it up.",
    "I don't know… it's hard to put into words.",
    "My job — if you can call it that — is [stocking shelves|answering phones|data entry|driving deliveries].",
    "I have a {pet} named {pet_name}.",
    "Money has been [tight|okay|a bit tight] since [rent went up|I changed jobs|the car repair].",
    "I'm writing this from [my car|the library|the break room|a coffee shop].",
    "Anyway, that's where I'm at.",
    "I guess I just needed to get this out.",
    "Any thoughts?",
    "Thanks in advance.",
    "I've talked to my {relative} about it a little.",
    "My [boss|manager|teacher|professor] [is pretty understanding|is strict|doesn't know any of this].",
    "I'll try to keep this short.",
    "This might be long, sorry.",
    "We [adopted a dog|painted the living room|bought a new couch|switched internet providers] [last month|recently|in the spring].",
    "The weather has been [freezing|really hot|weird|nice] [this week|here|all month].",
    "I spent the weekend helping my {relative} [move|paint their house|fix their car|set up a new phone].",
    "My [classes|shifts|meetings] start at [eight|nine|seven] most days.",
    "I'm the [oldest|youngest|middle] of [three|four|two] kids.",
    "My parents [got divorced|moved abroad|split up] when I was [ten|twelve|little|in high school].",
    "I graduated [last year|two years ago|in May] with a degree in {subject}.",
    "What would you guys do in my situation?",
    "Update: [nothing much has changed|I talked to my {relative}|I'll post again later].",
    "My {pet} {pet_name} [knocked over a plant|learned a new trick|got into the trash] [today|this morning|on {weekday}].",
    "I signed up for a [pottery|cooking|yoga|first aid] class that starts next [week|month].",
    "The landlord is [finally fixing the heater|raising the rent|replacing the windows] [this month|next week].",
    "My {relative} is getting married in [June|the fall|two months].",
    "I take the [bus|train|subway] to [work|school] most days.",
    "Our [team|department|class] got a new [manager|teacher|coordinator] [recently|in January|last month].",
    "So this is kind of a long story.",
    "I'll give some context first.",
    "Posting here because I don't know who else to ask.",
    "Please be nice, this is hard for me to write.",
    "[Anyway|So yeah|Honestly], I'm rambling.",
    "I'm [34|28|41|23]F, if that matters.",
    "I'm [19|25|33|45]M for context.",
    "We have a [group chat|family chat|work chat] that never stops buzzing.",
    "My {relative} lives [two hours away|across the country|down the street|in another state].",
    "I'm saving up for a [car|trip to Japan|new laptop|deposit on an apartment].",
    "Last {weekday} was my {relative}'s birthday, so we got [pizza|tacos|sushi|cake].",
)

# Short pieces for posts under ~20 words; every one fits in a few words.
SHORT: tuple[str, ...] = (
    "Title says it all.", "Anyone else?", "Need advice.", "Long time lurker.", "Just venting.",
    "Throwaway account.", "Any thoughts?", "Thanks in advance.", "Not sure where else to post this.",
    "Help please.", "See title.", "Posting from mobile.", "First post here.", "Be gentle please.",
    "Sorry if this is dumb.", "Question for you all.", "Long story short.", "Just curious.",
)

# Clinical rationales for the `explanation` column.
POSITIVE_EXPLANATION: dict[str, tuple[str, ...]] = {
    "DEPRESSED_MOOD": (
        "Reports persistent low mood most days (A.1).",
        "Describes sustained sadness and emptiness (A.1).",
        "Depressed mood expressed in the writer's own words (A.1).",
        "Pervasive low, hopeless mood (A.1).",
        "Writer describes feeling down nearly every day (A.1).",
    ),
    "ANHEDONIA": (
        "Marked loss of interest in previously enjoyed activities (A.2).",
        "Describes inability to feel pleasure (A.2).",
        "Withdrawal from hobbies due to lack of interest (A.2).",
        "Reports anhedonia: activities no longer enjoyable (A.2).",
    ),
    "APPETITE_CHANGE": (
        "Reports a significant change in appetite (A.3).",
        "Describes weight or appetite change without intent (A.3).",
        "Appetite loss or overeating described (A.3).",
        "Eating pattern markedly changed (A.3).",
    ),
    "SLEEP_ISSUES": (
        "Reports insomnia or hypersomnia (A.4).",
        "Describes disturbed sleep (A.4).",
        "Sleep pattern markedly disrupted (A.4).",
        "Difficulty falling or staying asleep, or sleeping far too much (A.4).",
    ),
    "PSYCHOMOTOR": (
        "Describes observable restlessness or slowing (A.5).",
        "Psychomotor agitation or retardation described (A.5).",
        "Psychomotor change noticed by the writer or others (A.5).",
    ),
    "FATIGUE": (
        "Reports persistent fatigue or loss of energy (A.6).",
        "Describes exhaustion out of proportion to effort (A.6).",
        "Low energy nearly every day (A.6).",
    ),
    "WORTHLESSNESS": (
        "Expresses feelings of worthlessness (A.7).",
        "Excessive or inappropriate guilt described (A.7).",
        "Harsh self-blame and low self-worth (A.7).",
    ),
    "COGNITIVE_ISSUES": (
        "Reports diminished ability to concentrate or decide (A.8).",
        "Describes poor focus and memory (A.8).",
        "Concentration difficulties described (A.8).",
    ),
    "SUICIDAL_THOUGHTS": (
        "Thoughts of death or suicide expressed (A.9).",
        "Suicidal ideation in the writer's own words (A.9).",
        "Recurrent thoughts about dying (A.9).",
    ),
}

# Hard-negative rationales start with their kind, so the kind can be read back.
NEGATIVE_EXPLANATION: dict[str, tuple[str, ...]] = {
    "negation": (
        "Negated: the writer denies {theme}.",
        "Negated: explicit statement of no {theme}; not evidence.",
        "Negated: {theme} is ruled out by the writer.",
    ),
    "recovery": (
        "Resolved: {theme} is described as past, not current.",
        "Resolved: the writer reports recovery from {theme}.",
        "Resolved: {theme} no longer present; not evidence.",
    ),
    "opposite": (
        "Opposite: the writer describes the reverse of {theme}.",
        "Opposite: reports the contrary of {theme}; not evidence.",
    ),
}
THEME: dict[str, str] = {
    "DEPRESSED_MOOD": "low mood",
    "ANHEDONIA": "loss of interest",
    "APPETITE_CHANGE": "appetite or weight change",
    "SLEEP_ISSUES": "sleep problems",
    "PSYCHOMOTOR": "psychomotor change",
    "FATIGUE": "fatigue",
    "WORTHLESSNESS": "worthlessness or guilt",
    "COGNITIVE_ISSUES": "concentration problems",
    "SUICIDAL_THOUGHTS": "suicidal thoughts",
}
SPECIAL_EXPLANATION: dict[str, tuple[str, ...]] = {
    "treatment": (
        "Mentions a diagnosis or medication; clinically relevant, outside A.1-A.9.",
        "Treatment history noted; not covered by A.1-A.9.",
    ),
    "bipolar": (
        "Describes bipolar or manic features; outside A.1-A.9.",
        "Possible manic episode; relevant to differential diagnosis, not A.1-A.9.",
    ),
    "grief": (
        "Bereavement context; clinically relevant but outside A.1-A.9.",
        "Recent loss described; relevant context outside A.1-A.9.",
    ),
    "substance": (
        "Substance use described; clinically relevant, not A.1-A.9.",
        "Alcohol or drug use as coping; outside A.1-A.9.",
    ),
}

# Reddit-style noise and annotation rewording.
TYPOS: dict[str, str] = {
    "because": "becuase", "really": "realy", "definitely": "definately", "I'm": "im",
    "don't": "dont", "can't": "cant", "probably": "prolly", "though": "tho", "you": "u",
    "anything": "anythin", "something": "somethin", "I've": "ive", "it's": "its", "just": "jsut",
    "the": "teh", "and": "adn", "doesn't": "doesnt", "about": "abt", "with": "w/", "tomorrow": "tmrw",
}
SLANG: tuple[str, ...] = ("idk", "tbh", "lol", "ngl", "fr")
EMOJI: tuple[str, ...] = ("😞", "🙃", "😅", "💀", "😔", "🥲")
SYNONYMS: dict[str, str] = {
    "really": "truly", "so": "very", "lately": "recently", "anymore": "any longer", "just": "simply",
    "can't": "cannot", "don't": "do not", "I'm": "I am", "I've": "I have", "every": "each",
    "completely": "totally", "totally": "completely", "honestly": "frankly", "feel": "am feeling",
    "because": "since", "even": "still", "keep": "continue", "hours": "hrs", "months": "mos",
    "it's": "it is", "that's": "that is", "won't": "will not", "didn't": "did not", "isn't": "is not",
    "haven't": "have not", "wouldn't": "would not", "doesn't": "does not", "my": "the",
    "all the time": "constantly", "a lot": "lots", "anything": "a thing", "think": "guess",
    "nothing": "not a thing", "everything": "it all", "a while": "some time",
}
# Words whose removal keeps the meaning (never a negation or a particle like "off").
DROPPABLE: frozenset[str] = frozenset(
    "so really just actually mostly pretty honestly even still my the that completely totally "
    "truly very utterly seriously deeply incredibly already".split()
)
