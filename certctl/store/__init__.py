"""Storage: tables, migrations, repositories. The only package that writes SQL."""
