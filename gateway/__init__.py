"""epp's OpenAI-compatible routing front end."""
