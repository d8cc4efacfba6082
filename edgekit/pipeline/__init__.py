"""The stages of one build in order: prepare the plan, run the steps, verify, fall back."""
