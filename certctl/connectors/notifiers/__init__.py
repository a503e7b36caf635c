"""Notifier connectors: Email, Webhook, Slack, Teams, PagerDuty, OpsGenie (connectors.md §6)."""
