"""TOTP, the second factor beside push (RFC 6238 over RFC 4226)."""
