"""The sampling engine: one speculative round over two transition spaces, couplings, schedules, statistics."""
