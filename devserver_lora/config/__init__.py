"""DevServer's JSON as this product reads and writes it: output configs with `lora` and output chunks (`models`),
files (`files`), a whole `schemas/` tree (`tree`), new LoRA configs (`make`) and `devserver-lora validate`
(`validate`).

Imports the foundation and `lora.spec`; graphs, the client and DevServer wiring build on it.
"""
