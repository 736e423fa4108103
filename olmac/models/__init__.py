"""Float models, their data and their training, apart from the bit-exact reference.

What the integer flow is measured on, not part of it: the digits data and the demo
networks (``digits``, ``demo``), the one training loop every model here and every study
uses (``training``), and the character-LSTM study of the precision highway (``lstm``).
Trained weights are cached under ``build/models`` of the working directory.
"""
