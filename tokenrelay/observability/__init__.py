"""What the gateway tells its operators: structured log events."""
