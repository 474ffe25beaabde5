"""webhook-operator: Webhook and WebhookEvent resources delivered as signed HTTPS POSTs."""

__version__ = "0.1.0"

GROUP = "webhook-operator.io"
VERSION = "v1alpha1"
