//! Flows: orchestration over the ports, deadline-aware.
