"""Architecture transforms: MHA<->GQA conversion, sliding-window attention."""
