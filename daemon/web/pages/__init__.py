"""The server-rendered pages: issues, events, projects, mail and the overview, with what
they need to show an event safely."""
