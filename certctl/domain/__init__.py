"""Pure domain: enums, value objects, errors. Imports nothing else of ours."""
