"""Local stand-ins for the museum's services: embedded servers, simulator, demo."""
