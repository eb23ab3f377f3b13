"""The browser UI: the only package that imports gradio."""
