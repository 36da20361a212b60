"""Making run folders: `train` (per domain: synthetic, video, mri), `calibrate`, `cv`, `import-official`."""
