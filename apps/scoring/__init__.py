"""Scoring with a trained run: videos (whole clips or long-video windows), scans, and the same on Ray.
`outputs` owns the output folder (scores.csv, details.jsonl, segments.csv); `command` is `adafocus score`."""
