"""What a build shows: progress while it runs, a summary, JSON and trace files after."""
