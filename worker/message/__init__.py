"""What a message is, decided without I/O: validation, phone numbers, segments, quiet hours.

Every module here is pure: no database, broker or HTTP library is imported.
"""
