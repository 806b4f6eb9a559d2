"""Every backend is a callable ``(input_ids, attention_mask) -> logits`` on int64 numpy arrays of shape
(batch, sequence), returning float32 (batch, 3). :func:`arena.backends.base.choose_backend` picks one."""
