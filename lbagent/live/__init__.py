"""What runs on a host: probe, actuator, state, config, daemon and its service. numpy only: never the simulator, the agent or torch."""
