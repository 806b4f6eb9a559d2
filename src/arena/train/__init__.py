"""arena-train: fine-tune a sequence classifier on train.csv with honest validation."""
