"""NATS JetStream event bus: events in, one delivery message per webhook, shared by replicas."""
