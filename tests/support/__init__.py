"""Real servers and processes for forklane's tests (loopback only, port 0, stopped by PID)."""
