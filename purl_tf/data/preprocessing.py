"""Image preprocessing: fitting decoded uint8 images to the model's input, augmenting
them for training and normalising their pixels the way each model expects."""
import tensorflow as tf

# Per-model normalisation of 0..255 pixels, and the augmentation each expects.
NORMALISERS = {
    "scale": lambda x: x / 255.0,
    "none": lambda x: x,  # 0..255, for models that rescale their own inputs
    "resnet50": lambda x: tf.keras.applications.resnet50.preprocess_input(x),
    "mobilenet_v2": lambda x: x / 127.5 - 1.0,
}
IMAGENET_STYLE = ("resnet50", "mobilenet_v2")
AUGMENTATIONS = ("none", "flip_crop", "inception")
_CENTRAL_FRACTION = 0.875  # ImageNet evaluation: resize to size / 0.875, crop the centre.


class Geometry:
  """Resizing, cropping, augmentation and normalisation of decoded uint8 images."""

  def __init__(self, shape, preprocessing, resize, augment):
    self.height, self.width, self.channels = shape
    self.preprocessing = preprocessing
    self.imagenet_style = preprocessing in IMAGENET_STYLE
    self.resize = resize
    self.augment = augment

  def _channels(self, image):
    depth = image.shape[-1]
    if depth == self.channels or depth is None:
      return image
    if self.channels == 3:
      return tf.image.grayscale_to_rgb(image)
    return tf.cast(tf.round(tf.image.rgb_to_grayscale(tf.cast(image, tf.float32))), tf.uint8)

  def _fit(self, image):
    """uint8 image of any size -> float32 (height, width, C) for the model's input."""
    image = tf.cast(image, tf.float32)
    if self.imagenet_style:
      # Resize the shorter side to size / 0.875, then crop the centre.
      shape = tf.cast(tf.shape(image)[:2], tf.float32)
      scale = tf.reduce_max(
          tf.constant([self.height, self.width], tf.float32) / _CENTRAL_FRACTION / shape)
      image = tf.image.resize(image, tf.cast(tf.math.ceil(shape * scale), tf.int32))
      return tf.image.resize_with_crop_or_pad(image, self.height, self.width)
    if self.resize == "pad":
      return tf.image.resize_with_crop_or_pad(image, self.height, self.width)
    return tf.image.resize(image, (self.height, self.width))

  def evaluation(self, image, label):
    """Deterministic geometry; uint8 out so that the cache stays small."""
    image = self._fit(self._channels(image))
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return tf.ensure_shape(image, (self.height, self.width, self.channels)), label

  def normalise(self, image, label):
    return NORMALISERS[self.preprocessing](tf.cast(image, tf.float32)), label

  def train(self, image, label, seed):
    """Augmented geometry, stateless: the (2,) int64 `seed` fixes every random choice."""
    image = self._channels(image)
    box_seed, crop_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 3))
    if self.augment == "inception":
      begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
          tf.shape(image), bounding_boxes=tf.zeros([1, 0, 4]), seed=box_seed,
          min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
          max_attempts=10, use_image_if_no_bounding_boxes=True)
      image = tf.slice(image, begin, size)
      image = tf.image.resize(tf.cast(image, tf.float32), (self.height, self.width))
      image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    else:
      image = self._fit(image)
      if self.augment == "flip_crop":
        image = tf.image.resize_with_crop_or_pad(image, self.height + 8, self.width + 8)
        image = tf.image.stateless_random_crop(image, (self.height, self.width, self.channels),
                                               crop_seed)
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    image = tf.ensure_shape(image, (self.height, self.width, self.channels))
    return self.normalise(image, label)
