"""Model-side operators: decode, CLIP backbone, zero-shot classifier, COLA, detector, policy.

Importing this package never imports Ray or Kafka.
"""

from cola_moderation.operators.errors import ColaError, ConfigError, DecodeError, DeviceError, ModelLoadError

__all__ = ["ColaError", "ConfigError", "DecodeError", "DeviceError", "ModelLoadError"]
