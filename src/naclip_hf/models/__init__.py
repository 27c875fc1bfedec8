"""Model packages of naclip-hf."""
