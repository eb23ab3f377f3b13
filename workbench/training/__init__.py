"""Training in a background worker process: job description, events, launcher, worker."""
