//! The image side of the manager: machined's image API over the image store, with the same
//! authorization rule (changing images needs root).

use crate::images::store::{ImageInfo, StoreError};

use super::{Action, Caller, Manager, ManagerError};

impl From<StoreError> for ManagerError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NoSuchImage(n) => ManagerError::NoSuchImage(n),
            StoreError::BadName { name, .. } => ManagerError::NoSuchImage(name),
            other => ManagerError::Failed(other.to_string()),
        }
    }
}

impl Manager {
    /// Every image in the pool.
    pub fn list_images(&self) -> Result<Vec<ImageInfo>, ManagerError> {
        Ok(self.images.list()?)
    }

    /// One image.
    pub fn get_image(&self, name: &str) -> Result<ImageInfo, ManagerError> {
        Ok(self.images.get(name)?)
    }

    /// An image's os-release fields.
    pub fn image_os_release(&self, name: &str) -> Result<Vec<(String, String)>, ManagerError> {
        Ok(self.images.os_release(name)?)
    }

    /// Removes an image.
    pub fn remove_image(&self, name: &str, caller: &Caller) -> Result<(), ManagerError> {
        self.get_image(name)?;
        caller.authorize(Action::ManageImages)?;
        Ok(self.images.remove(name)?)
    }

    /// Renames an image.
    pub fn rename_image(&self, name: &str, new_name: &str, caller: &Caller) -> Result<(), ManagerError> {
        self.get_image(name)?;
        caller.authorize(Action::ManageImages)?;
        self.images.rename(name, new_name)?;
        Ok(())
    }

    /// Copies an image (slow for big trees: call off the async runtime).
    pub fn clone_image(
        &self,
        name: &str,
        new_name: &str,
        read_only: bool,
        caller: &Caller,
    ) -> Result<(), ManagerError> {
        self.get_image(name)?;
        caller.authorize(Action::ManageImages)?;
        self.images.clone_image(name, new_name, read_only)?;
        Ok(())
    }

    /// Marks an image read-only or writable.
    pub fn mark_image_read_only(
        &self,
        name: &str,
        read_only: bool,
        caller: &Caller,
    ) -> Result<(), ManagerError> {
        self.get_image(name)?;
        caller.authorize(Action::ManageImages)?;
        Ok(self.images.set_read_only(name, read_only)?)
    }
}
