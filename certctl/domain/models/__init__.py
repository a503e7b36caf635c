"""Wire models: frozen pydantic models with the reference's JSON field names."""
