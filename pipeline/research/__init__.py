"""Research tools: attacks, evaluation under attack, detector calibration fitting, adversarial fine-tuning, the
reference model's training and the datasets they read. Never imported by the runtime or the jobs.
"""
