"""Persistent state behind one repository interface (see ``repository``)."""
