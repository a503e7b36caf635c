"""REST API: one router per resource; handlers parse, call one service function, shape the answer."""
