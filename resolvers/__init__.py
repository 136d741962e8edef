"""The operations: plain async functions over a session and an actor that enforce the rules."""
