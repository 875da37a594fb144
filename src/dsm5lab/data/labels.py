"""Label vocabulary of ReDSM5: the nine DSM-5 criteria A.1-A.9, SPECIAL_CASE and NO_SYMPTOMS."""

from __future__ import annotations

# Criteria A.1-A.9 in DSM-5 order; the column order of every label matrix in the project.
SYMPTOMS: tuple[str, ...] = (
    "DEPRESSED_MOOD",
    "ANHEDONIA",
    "APPETITE_CHANGE",
    "SLEEP_ISSUES",
    "PSYCHOMOTOR",
    "FATIGUE",
    "WORTHLESSNESS",
    "COGNITIVE_ISSUES",
    "SUICIDAL_THOUGHTS",
)
SPECIAL_CASE = "SPECIAL_CASE"
NO_SYMPTOMS = "NO_SYMPTOMS"

# Values allowed in the annotations' DSM5_symptom column.
ANNOTATION_LABELS: tuple[str, ...] = (*SYMPTOMS, SPECIAL_CASE)
# Post-level label columns written by prepare (the paper view adds NO_SYMPTOMS to the nine).
POST_LABELS: tuple[str, ...] = (*SYMPTOMS, SPECIAL_CASE, NO_SYMPTOMS)

# Posts per symptom in the released ReDSM5 (1,484 posts; DESIGN.md). The synthetic
# generator scales these to its size; tests hold it to them.
REDSM5_POSTS = 1484
REDSM5_SYMPTOM_FREE_POSTS = 392
REDSM5_POSTS_PER_LABEL: dict[str, int] = {
    "DEPRESSED_MOOD": 328,
    "ANHEDONIA": 124,
    "APPETITE_CHANGE": 44,
    "SLEEP_ISSUES": 102,
    "PSYCHOMOTOR": 35,
    "FATIGUE": 124,
    "WORTHLESSNESS": 311,
    "COGNITIVE_ISSUES": 59,
    "SUICIDAL_THOUGHTS": 165,
    "SPECIAL_CASE": 92,
}
REDSM5_MEAN_WORDS = 295

# Column contract of the two ReDSM5 CSV files.
POSTS_FILE = "redsm5_posts.csv"
ANNOTATIONS_FILE = "redsm5_annotations.csv"
POSTS_COLUMNS: tuple[str, ...] = ("post_id", "text")
ANNOTATIONS_COLUMNS: tuple[str, ...] = (
    "post_id",
    "sentence_id",
    "sentence_text",
    "DSM5_symptom",
    "status",
    "explanation",
)
