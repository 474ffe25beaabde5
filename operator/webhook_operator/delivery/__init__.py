"""Delivering WebhookEvents: the attempt queue and the HTTP transport that dials only checked addresses."""
