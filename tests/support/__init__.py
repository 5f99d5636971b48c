"""Helpers shared by the tests (never imported by a service).

services: the test database, API keys and the command service as a process; query: a journal seeded
through the journal writer, a broker publisher, an in-process query replica and Redis dumps;
order_flow: a seeded random order flow driven through the real engine.
"""
