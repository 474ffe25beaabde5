"""The authenticated HTTPS event ingress: parse (pure), review (TokenReview + SubjectAccessReview), sink, server."""
