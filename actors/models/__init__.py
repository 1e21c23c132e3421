"""The model store of the control process: registry, availability, manifests, verification,
downloads (huggingface_hub), repair and fallback. Nothing here imports torch or diffusers."""
