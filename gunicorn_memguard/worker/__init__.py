"""What runs inside a worker process: the guard, its sampler thread, reclaim, and the graceful stop."""
