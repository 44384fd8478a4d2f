"""Request control: the director that owns each request's lifecycle for every front end."""
