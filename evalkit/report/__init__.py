"""Views of stored results: the terminal recall table (and, later, the HTML leaderboard)."""
