"""Models: the networks PuRL prunes (builders), a user's saved model, the Keras 3 twin, and
dense pre-training."""
from purl_tf.models.builders import (check_compatible, cifar_resnet, classification_loss,
                                     lenet5, mobilenet_v2, outputs_probabilities, pretrain,
                                     resnet50, saved_model)

__all__ = ["check_compatible", "cifar_resnet", "classification_loss", "lenet5", "mobilenet_v2",
           "outputs_probabilities", "pretrain", "resnet50", "saved_model"]
