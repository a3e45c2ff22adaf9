"""What runs in gunicorn's master (arbiter) process: settings, limits, coordination, exit reports."""
