"""The Cython fast path: framing, ISO 8583 codec, MAC, PIN block, classifier.

Sans-I/O: every function takes bytes and returns values; nothing here
imports trio or touches a socket.
"""
