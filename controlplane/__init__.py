"""forklane control plane: stores sandboxes and routing rules, compiles and pushes snapshots."""
