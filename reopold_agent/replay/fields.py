"""Names of the per-token fields the replay colours by (no imports: the CLI parser uses them)."""

FIELDS = ("reward", "clipped", "logprob", "teacher", "entropy", "selection", "loss_mask", "mismatch")
"""Colourings the replay offers, in the order of keys 1-8."""

FIELD_LABELS = {
    "reward": "reward R", "clipped": "clipped reward max(R,c)", "logprob": "student log-prob",
    "teacher": "teacher log-prob", "entropy": "entropy", "selection": "REOPOLD selection",
    "loss_mask": "loss mask", "mismatch": "trainer - sampler log-prob",
}
"""Label of each field in legends, token details and tooltips."""
