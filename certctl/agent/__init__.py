"""The certctl agent: runs on the hosts that use certificates; keys are made and kept here."""
