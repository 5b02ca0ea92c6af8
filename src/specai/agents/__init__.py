"""Agents: profiles, the run loop that turns a query into events, their tools and their stored sessions."""
