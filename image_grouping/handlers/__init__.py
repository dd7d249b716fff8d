"""What each message does: plain async functions taking the message's data and their dependencies.

`detection.handle_images_uploaded` analyses uploaded images, a batch at a time; `recognition` groups faces
into persons.
They return the events to publish; the consumer publishes them and then acknowledges the message.
"""
