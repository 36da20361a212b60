"""The demo's parts (`adafocus demo`): the focus proof, video scoring, MRI cross-validation."""
